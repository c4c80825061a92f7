"""Read-only views of a campaign: status, deadlines, the HTML report."""

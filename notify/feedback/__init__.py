"""Feedback: SES events, bounce reports and their reasons, SQS, the suppression list."""

"""The campaign: campaign.toml read into a typed, validated Campaign."""

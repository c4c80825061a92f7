"""Evidence: the hash chain, export and verification, signing, lookup, the review pack and approval."""

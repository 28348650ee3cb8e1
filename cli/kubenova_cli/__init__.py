"""The `kubenova` command for people."""

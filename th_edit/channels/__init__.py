"""Channel discovery between attention heads (METHOD.md §2, §3, §6)."""

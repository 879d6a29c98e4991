"""What users write: agents, tools and execution graphs (and their pictures)."""

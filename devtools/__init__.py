"""Local tooling: the offline Pulumi workspace and the end-to-end demo."""

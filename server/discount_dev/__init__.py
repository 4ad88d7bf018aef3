"""Developer tools on top of the discount service: `discount dev-stack` and `discount dev-token`."""

"""The runtime: message types, config schema, road map, stage contract and CLI."""

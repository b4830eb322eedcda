"""The shared contract: messages, config schema, stage interfaces, road map, paths, vehicle parameters."""

"""Study configuration: the study config file, its strict YAML reader and the built-in presets."""

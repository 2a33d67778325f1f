"""The operator's config: pydantic models of the YAML file, the one home of shared defaults and literals."""

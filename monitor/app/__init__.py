"""The composition root: builds every part from the config and routes results between them."""

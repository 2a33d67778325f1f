"""Wire contracts: MQTT topics and the typed models of every message, with the JSON Schemas made from them."""

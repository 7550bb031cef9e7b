"""ReRAM cell models, registered as an SME plugin."""

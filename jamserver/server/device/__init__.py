"""The model's device: the batching engine and its fair share of UNet time between rooms."""

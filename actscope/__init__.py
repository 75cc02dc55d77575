"""actscope: explore what language-model neurons and SAE features respond to."""

"""Loading models and tokenizers, the MLP head, transformers compatibility, and tiny local models."""

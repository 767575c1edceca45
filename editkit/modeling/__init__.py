"""Backbone modules that editkit adds on top of diffusers (one file per method's network)."""

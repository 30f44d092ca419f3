"""The hybrid chat templates (Jinja), installed as package data `common.templates`."""

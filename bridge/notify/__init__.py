"""Telling the outside world: webhooks, e-mail, systemd."""

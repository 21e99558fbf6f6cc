"""Hub side of Oráculo: authenticator, spawners and GPU assignment, roles and services wiring."""

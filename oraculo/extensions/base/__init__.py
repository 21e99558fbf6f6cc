"""What every feature of the extension may use, and which uses no feature: the feature base
class, the base handler and its error envelope, and the clients of the model service."""

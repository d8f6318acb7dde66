"""Deployment: a trained model exported to a fast CPU inference engine (CTranslate2, :mod:`.ct2`)."""

"""Using a trained network: loading it (``trained``, from any ``weights`` source), evaluating it
alone or in an ensemble (``evaluation``), classifying photos (``photos``), its hidden-layer
features and a linear probe on them (``features``), and the deployable program (``deploy``).

Import the modules themselves (``from alexnet.inference.trained import load_trained``): the
package imports nothing, so that no import of it can close a cycle.
"""

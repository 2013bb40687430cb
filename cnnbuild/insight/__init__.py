"""The backward pass made visible: per-layer gradients (``trace --grads``), gradient flow
during training (``gradients.json``), feature maps and Grad-CAM (``show``), architecture
diagrams (``plot``) and the run report (``report.html``).

Only :mod:`cnnbuild.insight.diagram`'s fallback and DOT paths run without TensorFlow.
"""

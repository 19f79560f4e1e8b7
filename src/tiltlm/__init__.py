"""tiltlm: fine-tune language models toward a target distribution pi*(y|x) ∝ pi0(y|x) exp(r(x,y)/beta)."""

__version__ = "0.1.0"

"""NeuroDiff from Python: audit what fine-tuning changed, embedded or on the service.

    import neurodiff as nd
    a = nd.audit("base/", "ft/", analyses=["weights", "activations", "traces"], out="runs/a1")
    a.tensors, a.blocks("activations"), a.traces.tokens(), a.plot("activation_trajectory")
    nd.Client("http://host:8080", token=...).submit(base=..., finetuned=...).wait().results()

Importing checks the installed torch first: the bundled binary loads that torch's libtorch, which
must be the exact version it was built against.
"""

from ._build import PACKAGE_VERSION as __version__
from ._build import TORCH_VERSION
from ._torch import TorchVersionError, check_torch

torch_version = check_torch()

from ._binary import NeuroDiffError  # noqa: E402
from ._codec import ApiError, DecodeError  # noqa: E402
from .client import AuditFailed, Client, Job  # noqa: E402
from .embedded import audit, organisms  # noqa: E402
from .results import Results, ResultsError, Traces, load  # noqa: E402

__all__ = [
    "TORCH_VERSION",
    "ApiError",
    "AuditFailed",
    "Client",
    "DecodeError",
    "Job",
    "NeuroDiffError",
    "Results",
    "ResultsError",
    "TorchVersionError",
    "Traces",
    "__version__",
    "audit",
    "load",
    "organisms",
    "torch_version",
]

"""The images of the pipeline on a cluster: the runtime every component runs in, and the vLLM
server image of ``sampler=deploy``.

Set ``SALMON_RUNTIME_IMAGE`` (and ``SALMON_VLLM_IMAGE``) when compiling to point at your registry;
the defaults are the tags built from ``images/`` for this version. The compiled tasks that launch
TrainJobs, PyTorchJobs or vLLM servers carry both values as environment variables
(:data:`IMAGE_ENV`), so what they launch runs the same images.
"""

from salmon.cluster.spec import RUNTIME_IMAGE_ENV, VLLM_IMAGE_ENV, runtime_image, vllm_image

RUNTIME_IMAGE = runtime_image()
VLLM_IMAGE = vllm_image()
IMAGE_ENV = {RUNTIME_IMAGE_ENV: RUNTIME_IMAGE, VLLM_IMAGE_ENV: VLLM_IMAGE}

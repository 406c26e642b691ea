"""Kubernetes side of salmon: typed job and server specs rendered to manifests (TrainJob,
PyTorchJob, vLLM Deployment + Service), offline validation of manifests, and the launchers that
create, wait on and clean up those objects. Uses the kubernetes client; never imports torch."""

"""One file per lecture claim; each exposes ``evaluate(...) -> Verdict`` from measured inputs."""

"""The claims ledger: experiments that test the lecture's claims on data they build themselves."""

from moescope.lab.sphere_laws import SphereConfig, run_sphere

__all__ = ["SphereConfig", "run_sphere"]

"""kubenova's local environment: a real control plane, real libvirt hosts, a guest image.

Used by the quickstart (``kubenova up``), the tests and the benchmarks. Everything here starts
real programs (etcd, kube-apiserver, libvirtd, virtlogd) as local processes; nothing is mocked.
"""

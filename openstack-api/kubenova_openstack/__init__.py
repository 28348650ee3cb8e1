"""kubenova's OpenStack API facade: Compute v2.1, Image v2 and a minimal Identity v3 served
over kubenova's custom resources, every request made to the Kubernetes API as its caller."""

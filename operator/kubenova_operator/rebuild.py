"""Rebuilding a Server from another Image (Nova's rebuild): as soon as a bound Server's
``spec.imageRef`` names another Image than the one pinned in ``status.image`` — admission lets
it change only with a new ``rebuildRequestedAt`` — the controller pins the new Image's bits
there. The agent rebuilds from those bits, and everything after (rescue with the Server's own
image, moves, an evacuation) uses them, never what the Image of that name says later; the
status says which Image the Server is built from."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kubernetes.client.exceptions import ApiException

from kubenova_api import kube
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import ImageSpec, PinnedImage, Server
from kubenova_operator import binding
from kubenova_operator.cluster import Cluster, ServerSummary

log = logging.getLogger(__name__)


class Repins:
    def __init__(self, k: kube.Kube) -> None:
        self.kube = k

    def run_pass(self, cluster: Cluster, images: Mapping[str, ImageSpec]) -> None:
        """Only the Servers whose imageRef changed are looked at (kept by the cluster). One
        whose new Image does not exist (yet) waits: the agent says so in its Ready condition,
        and the Image's creation starts another pass."""
        for server in cluster.repinning():
            image = images.get(server.image_ref)
            if image is not None:
                self.repin(server, image)

    def repin(self, server: ServerSummary, image: ImageSpec) -> None:
        current = self.kube.get(Server, server.name, server.namespace)
        if (
            current is None
            or current.metadata.deleting
            or current.status.nodeName is None
            or current.status.image is None
            or current.status.image.name == current.spec.imageRef
        ):
            return
        status = binding.controller_status(current)
        status.image = PinnedImage.of(current.spec.imageRef, image)
        ref = ObjectRef.to(current)
        try:
            # Conditional: a Server changed meanwhile is looked at again by the next pass
            # (its event starts one).
            self.kube.apply_status(ref, status, resource_version=current.metadata.resourceVersion)
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise
        was = current.status.image.name
        self.kube.event(
            ref, "ImagePinned", f"rebuilding from Image {current.spec.imageRef} (was {was})"
        )
        log.info("pinned image %s for %s (was %s)", current.spec.imageRef, server.full_name, was)

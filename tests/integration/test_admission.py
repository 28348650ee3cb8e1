"""What the API server can reject, it rejects — with a message a person can act on — and
nothing is stored."""

from __future__ import annotations

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import delete_unheld

pytestmark = pytest.mark.timeout(120)

SHA = "a" * 64


def _apply(api: stack.Stack, body: dict) -> tuple[int, str]:
    out = api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body), check=False)
    return out.returncode, out.stderr


def _flavor(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Flavor",
        "metadata": {"name": name},
        "spec": spec,
    }


def _image(name: str, source: dict, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": name},
        "spec": {"source": source, **spec},
    }


def _server(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _smig(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ServerMigration",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _uec(kernel_url: str = "http://images.example/vmlinuz") -> dict:
    return {
        "uec": {
            "kernel": {"url": kernel_url, "sha256": SHA},
            "ramdisk": {"url": "http://images.example/initrd", "sha256": SHA},
        }
    }


DISK = {"disk": {"url": "http://images.example/disk.qcow2", "sha256": SHA}}

CASES = [
    pytest.param(
        _flavor("zero-cpu", vcpus=0, memoryMiB=128),
        "spec.vcpus in body should be greater than or equal to 1",
        id="zero-vcpus",
    ),
    pytest.param(
        _flavor("neg-mem", vcpus=1, memoryMiB=-64),
        "spec.memoryMiB in body should be greater than or equal to 16",
        id="negative-memory",
    ),
    pytest.param(_flavor("no-mem", vcpus=1), "spec.memoryMiB: Required value", id="no-memory"),
    pytest.param(
        _server("no-image", flavorRef="m1.tiny"),
        "spec.imageRef: Required value",
        id="missing-imageRef",
    ),
    pytest.param(
        _server("extra", flavorRef="m1.tiny", imageRef="x", colour="red"),
        'unknown field "spec.colour"',
        id="unknown-field",
    ),
    pytest.param(
        _server("bad-power", flavorRef="m1.tiny", imageRef="x", powerState="Asleep"),
        'spec.powerState: Unsupported value: "Asleep"',
        id="bad-enum",
    ),
    pytest.param(
        _server(
            "rel", flavorRef="m1.tiny", imageRef="x", files=[{"path": "etc/motd", "content": "x"}]
        ),
        "spec.files[0].path in body should match '^/",
        id="file-path-relative",
    ),
    pytest.param(
        _server(
            "dots",
            flavorRef="m1.tiny",
            imageRef="x",
            files=[{"path": "/etc/../root/.ssh/authorized_keys", "content": "x"}],
        ),
        "path must not contain '.' or '..' segments",
        id="file-path-dotdot",
    ),
    pytest.param(
        _server(
            "dir", flavorRef="m1.tiny", imageRef="x", files=[{"path": "/etc/", "content": "x"}]
        ),
        "path must name a file, not a folder",
        id="file-path-folder",
    ),
    pytest.param(
        _server(
            "big",
            flavorRef="m1.tiny",
            imageRef="x",
            files=[{"path": "/big", "content": "x" * 65537}],
        ),
        "spec.files[0].content: Too long",
        id="file-too-big",
    ),
    pytest.param(
        _server(
            "many",
            flavorRef="m1.tiny",
            imageRef="x",
            files=[{"path": f"/f{i}", "content": "x"} for i in range(11)],
        ),
        "spec.files: Too many: 11: must have at most 10 items",
        id="too-many-files",
    ),
    pytest.param(
        _server("reboot", flavorRef="m1.tiny", imageRef="x", rebootType="Gentle"),
        'spec.rebootType: Unsupported value: "Gentle"',
        id="bad-reboot-type",
    ),
    pytest.param(
        _image("not-a-url", _uec("not a url")),
        "must be an http:// or https:// URL",
        id="image-url-not-a-url",
    ),
    pytest.param(
        _image("ftp-url", _uec("ftp://images.example/vmlinuz")),
        "must be an http:// or https:// URL",
        id="image-url-wrong-scheme",
    ),
    pytest.param(
        _image("short-sum", {"disk": {"url": "http://x.example/d", "sha256": "abc"}}),
        "should match '^[a-f0-9]{64}$'",
        id="bad-checksum-format",
    ),
    pytest.param(
        _image("both", {**_uec(), "disk": {"url": "http://x.example/d", "sha256": SHA}}),
        "exactly one of source.disk or source.uec is set",
        id="disk-and-uec",
    ),
    pytest.param(
        _image("neither", {}), "exactly one of source.disk or source.uec is set", id="no-source"
    ),
    pytest.param(
        _image("colour", DISK, properties={"hw_colour": "red"}),
        'unknown field "spec.properties.hw_colour"',
        id="image-property-unknown",
    ),
    pytest.param(
        _image("fw", DISK, properties={"hw_firmware_type": "coreboot"}),
        'spec.properties.hw_firmware_type: Unsupported value: "coreboot"',
        id="image-firmware-unknown",
    ),
    pytest.param(
        _image("sb-bios", DISK, properties={"os_secure_boot": "required"}),
        "os_secure_boot: required needs hw_firmware_type: uefi",
        id="secure-boot-without-uefi",
    ),
    pytest.param(
        _image(
            "sb-pc",
            DISK,
            properties={
                "hw_firmware_type": "uefi",
                "os_secure_boot": "required",
                "hw_machine_type": "pc-i440fx-7.2",
            },
        ),
        "os_secure_boot: required needs a q35 machine type",
        id="secure-boot-on-i440fx",
    ),
    pytest.param(
        _image(
            "sb-uec", _uec(), properties={"hw_firmware_type": "uefi", "os_secure_boot": "required"}
        ),
        "os_secure_boot: required needs a disk image",
        id="secure-boot-uec",
    ),
    pytest.param(
        _image("ide-q35", DISK, properties={"hw_firmware_type": "uefi", "hw_disk_bus": "ide"}),
        "hw_disk_bus ide needs an i440fx machine type",
        id="ide-on-q35",
    ),
    pytest.param(
        _image("machine", DISK, properties={"hw_machine_type": "virt"}),
        "spec.properties.hw_machine_type in body should match",
        id="machine-type-unknown",
    ),
    pytest.param(
        _flavor("bad-mode", vcpus=1, memoryMiB=128, extraSpecs={"hw:cpu_mode": "host"}),
        "hw:cpu_mode must be one of default, host-model, host-passthrough, custom, cluster",
        id="cpu-mode-unknown",
    ),
    pytest.param(
        _flavor("bad-model", vcpus=1, memoryMiB=128, extraSpecs={"hw:cpu_model": "</model>"}),
        "hw:cpu_model must be a libvirt CPU model name",
        id="cpu-model-not-a-name",
    ),
    pytest.param(
        _flavor(
            "mode-and-model",
            vcpus=1,
            memoryMiB=128,
            extraSpecs={"hw:cpu_mode": "host-model", "hw:cpu_model": "EPYC"},
        ),
        "hw:cpu_model needs hw:cpu_mode custom (or no hw:cpu_mode)",
        id="cpu-model-without-custom-mode",
    ),
    pytest.param(
        _flavor("long-spec", vcpus=1, memoryMiB=128, extraSpecs={"note": "x" * 256}),
        "Too long: may not be more than 255",
        id="extra-spec-too-long",
    ),
    *[
        pytest.param(
            _image(f"img-{i}", _uec(url)),
            "never image sources",
            id=f"image-url-{why}",
        )
        for i, (url, why) in enumerate(
            [
                ("http://169.254.169.254/latest/meta-data/", "metadata-service"),
                ("http://[fe80::1]/k", "ipv6-link-local"),
                ("http://0.0.0.0/k", "unspecified"),
                ("http://224.0.0.1/k", "multicast"),
                ("http://255.255.255.255/k", "broadcast"),
            ]
        )
    ],
    *[
        pytest.param(
            _image(f"num-{i}", _uec(url)),
            "the URL's host must be a DNS name or a canonical IP address",
            id=f"image-url-{why}",
        )
        for i, (url, why) in enumerate(
            [
                ("http://2852039166/k", "decimal-address"),
                ("http://0xA9.0xFE.0xA9.0xFE/k", "hex-address"),
                ("http://127.1/k", "short-address"),
                ("http://[::ffff:169.254.169.254]/k", "ipv4-mapped"),
            ]
        )
    ],
    pytest.param(
        _image("nul", {"uec": {**_uec()["uec"], "cmdline": "console=ttyS0\x00 init=/x"}}),
        "spec.source.uec.cmdline in body should match",
        id="cmdline-with-a-nul",
    ),
    pytest.param(
        _smig("no-server"),
        "spec.serverRef: Required value",
        id="migration-without-server",
    ),
    pytest.param(
        _smig("postcopy", serverRef="web", completionAction="PostCopy"),
        "completionAction PostCopy needs allowPostCopy: true",
        id="postcopy-not-allowed",
    ),
    pytest.param(
        _smig("slowly", serverRef="web", completionTimeoutPerGiB="soon"),
        "spec.completionTimeoutPerGiB in body should match",
        id="migration-timeout-not-a-duration",
    ),
    pytest.param(
        _smig("neg", serverRef="web", bandwidthMiBps=-1),
        "spec.bandwidthMiBps in body should be greater than or equal to 0",
        id="negative-bandwidth",
    ),
]


@pytest.mark.parametrize(("body", "message"), CASES)
def test_invalid_specs_are_refused_with_a_readable_message(
    api: stack.Stack, body: dict, message: str
) -> None:
    code, stderr = _apply(api, body)
    assert code != 0
    assert message in stderr, stderr
    kind = body["kind"].lower()
    args = ["get", kind, body["metadata"]["name"]]
    if body["kind"] in ("Server", "ServerMigration"):
        args += ["-n", "default"]
    assert "NotFound" in api.kubectl(*args, check=False).stderr  # nothing was stored


def test_what_only_a_host_or_a_policy_can_judge_is_admitted(api: stack.Stack) -> None:
    """Known CPU spellings pass (whether a host knows the model is its agent's call), and
    loopback or private image URLs pass: refusing them is the agents' source policy, which an
    admin may widen for a node-local mirror (and the test bed does, for 127.0.0.1)."""
    for name, specs in [
        ("cpu-custom", {"hw:cpu_mode": "custom", "hw:cpu_model": "EPYC-v4"}),
        ("cpu-model-only", {"hw:cpu_model": "Skylake-Client-IBRS", "hw:cpu_policy": "x"}),
        ("cpu-cluster", {"hw:cpu_mode": "cluster"}),
    ]:
        code, stderr = _apply(api, _flavor(name, vcpus=1, memoryMiB=128, extraSpecs=specs))
        assert code == 0, stderr
    for name, url in [
        ("img-loopback", "http://127.0.0.1:8080/vmlinuz"),
        ("img-private", "https://10.1.2.3/vmlinuz"),
        ("img-ipv6", "http://[2001:db8::1]/vmlinuz"),
        ("img-name", "https://images.example/v1/vmlinuz"),
        ("img-digits-in-name", "http://123.example/vmlinuz"),
    ]:
        code, stderr = _apply(api, _image(name, _uec(url)))
        assert code == 0, (url, stderr)


def test_flavors_and_image_sources_are_immutable(api: stack.Stack) -> None:
    assert _apply(api, _flavor("fixed", vcpus=1, memoryMiB=128))[0] == 0
    code, stderr = _apply(api, _flavor("fixed", vcpus=2, memoryMiB=128))
    assert code != 0 and "a Flavor is immutable" in stderr
    assert _apply(api, _image("fixed-img", _uec()))[0] == 0
    code, stderr = _apply(api, _image("fixed-img", _uec("http://elsewhere.example/k")))
    assert code != 0 and "an Image's source is immutable" in stderr
    # What may change, does: the image's minimum memory is not part of its bits.
    assert _apply(api, _image("fixed-img", _uec(), minMemoryMiB=64))[0] == 0


def test_consistent_image_properties_are_accepted_and_may_change(api: stack.Stack) -> None:
    uefi = {"hw_firmware_type": "uefi", "os_secure_boot": "required", "hw_machine_type": "q35"}
    assert _apply(api, _image("props", DISK, properties=uefi))[0] == 0
    bios = {"hw_firmware_type": "bios", "hw_disk_bus": "ide", "hw_machine_type": "pc"}
    assert _apply(api, _image("props", DISK, properties=bios))[0] == 0
    extra = {"hw_rng_model": "virtio", "hw_video_model": "none", "hw_disk_bus": "scsi"}
    assert _apply(api, _image("props", DISK, properties=extra))[0] == 0
    api.kubectl("delete", "image", "props")


def test_server_image_ref_changes_only_by_a_rebuild(api: stack.Stack) -> None:
    assert _apply(api, _server("pinned", flavorRef="m1.tiny", imageRef="one"))[0] == 0
    code, stderr = _apply(api, _server("pinned", flavorRef="m1.tiny", imageRef="two"))
    assert code != 0 and "imageRef changes only by a rebuild" in stderr
    at = "2026-11-29T22:00:00Z"
    rebuilt = _server("pinned", flavorRef="m1.tiny", imageRef="two", rebuildRequestedAt=at)
    assert _apply(api, rebuilt)[0] == 0
    again = _server("pinned", flavorRef="m1.tiny", imageRef="three", rebuildRequestedAt=at)
    code, stderr = _apply(api, again)  # the same request cannot change it a second time
    assert code != 0 and "imageRef changes only by a rebuild" in stderr
    delete_unheld(api, "default", "pinned")


def test_migration_spec_is_immutable(api: stack.Stack) -> None:
    assert _apply(api, _smig("once", serverRef="web"))[0] == 0
    code, stderr = _apply(api, _smig("once", serverRef="db"))
    assert code != 0 and "a ServerMigration's spec is immutable" in stderr
    header = api.kubectl("get", "smig", "-n", "default").stdout.splitlines()[0]
    for column in ("SERVER", "PHASE", "SOURCE", "TARGET", "PROGRESS"):
        assert column in header


def test_kubectl_shows_useful_columns_and_explains_fields(api: stack.Stack) -> None:
    assert _apply(api, _server("shown", flavorRef="m1.tiny", imageRef="cirros"))[0] == 0
    header = api.kubectl("get", "srv", "-n", "default", "-o", "wide").stdout.splitlines()[0]
    for column in ("PHASE", "HOST", "FLAVOR", "IMAGE", "POWER", "AGE"):
        assert column in header
    for short in ("fl", "img", "srv", "hv"):
        assert api.kubectl("get", short, "-A").returncode == 0
    explained = api.kubectl("explain", "server.spec.flavorRef").stdout
    assert "Name of the Flavor" in explained
    delete_unheld(api, "default", "shown")


def test_rbac_keeps_agents_to_their_job(api: stack.Stack) -> None:
    """RBAC is on: an agent's credentials cannot create Flavors (a user's job)."""
    out = api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(_flavor("by-agent", vcpus=1, memoryMiB=128)),
        user="kubenova:fleet",  # the agents' ClusterRole
        check=False,
    )
    assert out.returncode != 0 and "forbidden" in out.stderr


def test_choosing_the_host_is_for_admins(api: stack.Stack) -> None:
    """Issue 13: spec.hostName and a migration's spec.targetNode need the permission to place
    on that Hypervisor (a ValidatingAdmissionPolicy asking the API server's authorizer)."""
    ns = "tenant-place"
    api.kubectl("create", "namespace", ns, check=False)
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "member", "namespace": ns},
            "rules": [
                {
                    "apiGroups": ["compute.kubenova.io"],
                    "resources": ["servers", "servermigrations"],
                    "verbs": ["get", "list", "create", "update", "patch", "delete"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "alice-member", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "member"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}
            ],
        },
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))

    def as_alice(body: dict) -> tuple[int, str]:
        body["metadata"]["namespace"] = ns
        out = api.kubectl(
            "apply", "--as", "alice", "-f", "-", stdin=yaml.safe_dump(body), check=False
        )
        return out.returncode, out.stderr

    code, stderr = as_alice(_server("placed", flavorRef="m1.tiny", imageRef="i", hostName="h1"))
    assert code != 0 and "spec.hostName: choosing the host (h1) is for admins" in stderr, stderr
    assert as_alice(_server("free", flavorRef="m1.tiny", imageRef="i"))[0] == 0
    code, stderr = as_alice(_server("free", flavorRef="m1.tiny", imageRef="i", hostName="h1"))
    assert code != 0 and "is for admins" in stderr, "nor added later"
    code, stderr = as_alice(_smig("moved", serverRef="free", targetNode="h2"))
    assert code != 0 and "spec.targetNode: choosing the host (h2)" in stderr, stderr
    assert as_alice(_smig("moved", serverRef="free"))[0] == 0
    # An admin places it; the tenant still changes the rest of it.
    admin = _server("by-admin", flavorRef="m1.tiny", imageRef="i", hostName="h1")
    admin["metadata"]["namespace"] = ns
    assert _apply(api, admin)[0] == 0
    assert as_alice(_server("by-admin", flavorRef="m1.tiny", imageRef="i", hostName="h1",
                            powerState="Stopped"))[0] == 0  # fmt: skip
    # The permission, for one host only.
    grant = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "place-on-h1"},
            "rules": [
                {
                    "apiGroups": ["compute.kubenova.io"],
                    "resources": ["hypervisors"],
                    "resourceNames": ["h1"],
                    "verbs": ["place"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "alice-place-on-h1"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "place-on-h1",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}
            ],
        },
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(grant))
    try:
        assert as_alice(_server("placed", flavorRef="m1.tiny", imageRef="i", hostName="h1"))[0] == 0
        code, _ = as_alice(_server("elsewhere", flavorRef="m1.tiny", imageRef="i", hostName="h2"))
        assert code != 0
    finally:
        api.kubectl("delete", "clusterrolebinding", "alice-place-on-h1", check=False)
        api.kubectl("delete", "clusterrole", "place-on-h1", check=False)
        api.kubectl("delete", "servermigrations", "--all", "-n", ns, check=False)
        delete_unheld(api, ns)

"""The host's judgement of a guest CPU, from libvirt's domain capabilities."""

from __future__ import annotations

from kubenova_agent.libvirt import cpucheck, domain_xml

CAPS = """<domainCapabilities>
  <domain>qemu</domain><arch>x86_64</arch>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='host-model' supported='yes'><model fallback='forbid'>EPYC</model></mode>
    <mode name='custom' supported='yes'>
      <model usable='yes' vendor='unknown'>qemu64</model>
      <model usable='no' vendor='Intel'>Skylake-Client</model>
    </mode>
  </cpu>
</domainCapabilities>"""


def check(cpu: str | None) -> cpucheck.CpuRefusal | None:
    return cpucheck.check_guest_cpu(CAPS, cpu)


def test_known_usable_models_and_supported_modes_pass() -> None:
    assert check(None) is None
    assert check(domain_xml.cpu_element("custom", "qemu64")) is None
    assert check(domain_xml.cpu_element("host-model")) is None


def test_an_unknown_model_is_refused_with_what_is_known() -> None:
    got = check(domain_xml.cpu_element("custom", "Nonexistent-CPU"))
    assert got is not None and got.reason == "CPUModelUnknown"
    assert "'Nonexistent-CPU'" in got.message and "qemu64" in got.message


def test_an_unusable_model_and_an_unsupported_mode_are_refused() -> None:
    got = check(domain_xml.cpu_element("custom", "Skylake-Client"))
    assert got is not None and got.reason == "CPUModelUnusable"
    got = check(domain_xml.cpu_element("host-passthrough"))
    assert got is not None and got.reason == "CPUModeUnsupported"
    assert "qemu guests" in got.message
    got = check("<cpu mode=\"x']|//*[@a='\"/>")  # never an XPath of its own
    assert got is not None and got.reason == "CPUModeUnsupported"

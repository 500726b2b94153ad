import pytest
from vm import ipxe


def test_template_renders_with_guest_urls_and_extra_parameters():
    text = ipxe.render(ipxe.template_text(), "http://10.0.2.100/", "http://10.0.2.100:6385",
                       ["ipa-debug=1", "ipa-image-download-connection-retries=1"])
    kernel = next(line for line in text.splitlines() if line.startswith("kernel "))
    assert "http://10.0.2.100/deploy-agent.kernel" in kernel
    assert "ipa-api-url=http://10.0.2.100:6385" in kernel
    assert "BOOTIF=${mac} ipa-debug=1 ipa-image-download-connection-retries=1" in kernel
    # UEFI kernel stubs need the initrd named on the command line
    assert "initrd=deploy_ramdisk" in kernel
    assert "@" not in text.replace("@HTTP_URL@", "")


def test_template_without_placeholders_is_refused():
    with pytest.raises(ipxe.IpxeError, match="placeholders"):
        ipxe.render("#!ipxe\nkernel http://x/k\n", "http://h", "http://a", [])


def test_extra_parameters_need_exactly_one_anchor():
    template = "#!ipxe\nkernel @HTTP_URL@/k ipa-api-url=@API_URL@\n"
    assert "ipa-api-url=http://a" in ipxe.render(template, "http://h", "http://a", [])
    with pytest.raises(ipxe.IpxeError, match="BOOTIF"):
        ipxe.render(template, "http://h", "http://a", ["ipa-debug=1"])


def test_first_script_chains_over_http_and_retries(tmp_path):
    tftp, http = tmp_path / "tftp", tmp_path / "http"
    tftp.mkdir()
    http.mkdir()
    ipxe.write(str(tftp), str(http), "http://10.0.2.100", "http://10.0.2.100:6385", [])
    first = (tftp / ipxe.FIRST).read_text()
    assert first.startswith("#!ipxe\n")
    assert "chain --autofree http://10.0.2.100/boot.ipxe || goto retry" in first
    assert (http / ipxe.SECOND).read_text().startswith("#!ipxe")

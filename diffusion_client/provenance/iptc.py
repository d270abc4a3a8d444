"""Metadata marks that tools reading only metadata see: IPTC's DigitalSourceType in XMP, and EXIF `Software`.

`DigitalSourceType = trainedAlgorithmicMedia` is the IPTC term for images made by a trained model; it goes in
an XMP packet (an iTXt chunk in PNG, an APP1 segment in JPEG, an XMP chunk in WebP). EXIF `Software` says
`AI generated;flux2`, as BFL's reference code writes it. The generation settings ride along in the packet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from PIL import Image

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
EXIF_SOFTWARE_TAG = 0x0131
EXIF_SOFTWARE = "AI generated;flux2"  # BFL's wording
PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword XMP uses in PNG
MAX_XMP_BYTES = 60_000  # JPEG carries XMP in one APP1 segment of at most 65,533 bytes
LONG_TEXT_FIELDS = ("prompt", "original_prompt")  # what is cut first when the packet would not fit

_SOURCE_TYPE = re.compile(r"DigitalSourceType(?:\s*=\s*[\"']|>|\s+rdf:resource\s*=\s*[\"'])\s*([^\"'<\s]+)")


def xmp_packet(*, creator_tool: str, model: str, parameters: Mapping[str, Any] | None) -> bytes:
    """An XMP packet stating the IPTC digital source type, the tool and model, and (if given) the settings; the
    prompts in the settings are shortened if the packet would not fit a JPEG's XMP segment."""
    packet = _packet(creator_tool, model, parameters)
    if len(packet) > MAX_XMP_BYTES and parameters is not None:
        shortened = dict(parameters)
        for key in LONG_TEXT_FIELDS:
            if isinstance(shortened.get(key), str):
                shortened[key] = shortened[key][:2000] + "… (shortened to fit the XMP packet)"
        packet = _packet(creator_tool, model, shortened)
    if len(packet) > MAX_XMP_BYTES:
        packet = _packet(creator_tool, model, None)
    return packet


def _packet(creator_tool: str, model: str, parameters: Mapping[str, Any] | None) -> bytes:
    settings = ""
    if parameters is not None:
        settings = f"\n    flux2split:Parameters={quoteattr(json.dumps(dict(parameters), ensure_ascii=False))}"
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:flux2split="https://flux2-split.invalid/ns/1.0/"
    Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"
    xmp:CreatorTool={quoteattr(creator_tool)}
    flux2split:Model={quoteattr(model)}{settings}/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>""".encode()


def exif_software() -> bytes:
    """An EXIF block holding only `Software`."""
    exif = Image.Exif()
    exif[EXIF_SOFTWARE_TAG] = EXIF_SOFTWARE
    return exif.tobytes()


def read_xmp(image: Image.Image) -> str | None:
    """The XMP packet an opened image carries (PNG iTXt, or JPEG/WebP XMP), if any."""
    packet = image.info.get(PNG_XMP_KEY) or image.info.get("xmp")
    if isinstance(packet, bytes):
        return packet.decode("utf-8", errors="replace")
    return packet if isinstance(packet, str) else None


def read_source_type(image: Image.Image) -> str | None:
    """The IPTC DigitalSourceType an opened image's XMP states, whoever wrote it (capped: it is the file's text)."""
    packet = read_xmp(image)
    found = _SOURCE_TYPE.search(packet) if packet else None
    return found[1][:200] if found else None


def source_type_in(data: bytes) -> str | None:
    """The DigitalSourceType of an uncompressed XMP packet anywhere in a file's bytes (for files PIL will not open)."""
    found = _SOURCE_TYPE.search(data.decode("latin-1"))
    return found[1][:200] if found else None


def read_software(image: Image.Image) -> str | None:
    """EXIF `Software`, if the image has EXIF."""
    try:
        software = image.getexif().get(EXIF_SOFTWARE_TAG)
    except Exception:  # a damaged EXIF block is no mark, not a crash
        return None
    return str(software)[:200] if software else None

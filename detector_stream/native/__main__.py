"""``python -m detector_stream.native``: build the compiled receive loop now (e.g. in an image build) and print where it is."""

from detector_stream.native.build import build

print(build())

"""The compiled receive loop of the stream v1 ingest (``recv_batch.c``): build, load, and the batch it hands to the decoder.

``build`` compiles and caches the C source; ``loop.NativeReceiveLoop`` drains a pyzmq
socket in one call with the interpreter released and decodes the DCU's well-formed
image messages there; everything else reaches ``StreamDecoder`` as raw messages.
"""

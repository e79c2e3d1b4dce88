"""File formats and the defence against hostile files, apart from the wire format.

Header checks that size an image before anything is allocated (`image_headers`),
our own MHA reader and writer (`mha`), the HDF5 walk (`hdf5`), what decoding may
cost (`limits`), private scratch folders (`scratch`), and the confined decoder
processes in which third-party readers see untrusted files (`confined`,
`decoder_process`). Nothing here knows HTTP or the TOMAAT protocol.
"""

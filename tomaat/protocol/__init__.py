"""The TOMAAT wire format, shared by the server and the client: elements, encodings, errors."""

"""The HTTP plumbing the prediction server, the registry and the clients share: the Twisted site with its limits
(`web`), request bodies and their budget (`body`), a listening service's start and stop (`daemon`), certificates
(`tls`), trust on first use (`trust`) and the treq agent (`http_client`). Nothing here knows the wire format."""

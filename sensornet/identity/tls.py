"""
TLS client certificates on the sensor port: a listener that requires a
certificate signed by a configured CA, and the names a certificate gives
its holder.

  - L{clientCertificateEndpoint} turns an C{ssl:} server endpoint string
    (C{ssl:5001:privateKey=key.pem:certKey=cert.pem}) and a CA file into an
    endpoint whose TLS handshake fails for a client without a certificate,
    or with one the CA did not sign (Twisted's C{ssl:} string has no option
    for client certificates).
  - L{certificateNames} reads a verified peer certificate's subject common
    name and DNS subject alternative names: the principal names it may
    claim (L{sensornet.identity.auth.SensorAccess.certificatePrincipal}
    takes the first that is a live sensor).

A certificate is an identity, not a permission: the name must also be a
sensor in the registry that is not revoked, so revoking a sensor cuts its
certificate off too, without a certificate revocation list.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IReactorSSL, IStreamServerEndpoint

from ..endpointstrings import endpointArguments

__all__ = ["certificateNames", "clientCertificateEndpoint", "isSSLEndpoint", "loadAuthorities"]



def isSSLEndpoint(description: str) -> bool:
    """
    Whether C{description} is an C{ssl:} server endpoint string.
    """
    return description.strip().lower().startswith("ssl:")


def loadAuthorities(path: str) -> Any:
    """
    The CA certificates in the PEM file at C{path}, as a Twisted trust root.

    @raise ValueError: The file holds no certificate.
    """
    import re

    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(path, "rb") as f:
        pem = f.read()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise ValueError(f"no PEM certificate in {path}")
    return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])


def clientCertificateEndpoint(reactor: IReactorSSL, description: str, clientCA: str) -> IStreamServerEndpoint:
    """
    An endpoint for the C{ssl:} server endpoint string C{description} that
    requires every client to present a certificate signed by a CA of the
    PEM file C{clientCA}; a client without one, or with one from another
    CA, fails the handshake and never reaches the protocol.

    C{description} takes Twisted's C{ssl:} arguments: the port, then
    C{privateKey}, C{certKey} (default: the key's file), C{extraCertChain},
    C{interface}, C{backlog} (default 50), C{dhParameters}.

    @raise ValueError: C{description} is not an C{ssl:} string, or an
        argument is unknown, or a file holds no key or certificate.
    """
    from twisted.internet.ssl import Certificate, CertificateOptions, DiffieHellmanParameters, PrivateCertificate
    from twisted.python.filepath import FilePath

    positional, keywords = endpointArguments(description.strip())
    if positional[0].lower() != "ssl":
        raise ValueError(f"not an ssl: endpoint: {description!r}")
    known = {"port", "privateKey", "certKey", "extraCertChain", "interface", "backlog", "dhParameters"}
    unknown = set(keywords) - known
    if unknown:
        raise ValueError(f"unknown argument(s) for an ssl: endpoint with --client-ca: {', '.join(sorted(unknown))}")
    names = ["port", "privateKey", "certKey", "sslmethod", "interface", "backlog"]
    for index, value in enumerate(positional[1:]):
        keywords.setdefault(names[index], value)
    port = int(keywords.get("port", "0"))
    privateKey = keywords.get("privateKey", "server.pem")
    certKey = keywords.get("certKey", privateKey)
    pem = FilePath(certKey).getContent() + b"\n" + FilePath(privateKey).getContent()
    private = PrivateCertificate.loadPEM(pem)
    chain = []
    if "extraCertChain" in keywords:
        import re

        content = FilePath(keywords["extraCertChain"]).getContent()
        chain = [
            Certificate.loadPEM(block).original
            for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", content, re.S)
        ]
    dh = None
    if "dhParameters" in keywords:
        dh = DiffieHellmanParameters.fromFile(FilePath(keywords["dhParameters"]))
    options = CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain or None,
        dhParameters=dh,
        # A trust root means: verify the peer, and require a certificate.
        trustRoot=loadAuthorities(clientCA),
    )
    return SSL4ServerEndpoint(
        reactor, port, options, backlog=int(keywords.get("backlog", "50")), interface=keywords.get("interface", "")
    )


def certificateNames(certificate: Any) -> List[str]:
    """
    The names a (verified) client certificate gives its holder, in order:
    its subject's common name(s), then its DNS subject alternative names;
    no name twice.

    @param certificate: A pyOpenSSL C{X509} (what a TLS transport's
        C{getPeerCertificate} returns) or a C{cryptography} certificate.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    names: List[str] = []
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        names.append(value)
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        names.extend(extension.value.get_values_for_type(x509.DNSName))
    unique: List[str] = []
    for name in names:
        if name and name not in unique:
            unique.append(name)
    return unique

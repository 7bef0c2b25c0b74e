"""Multi-domain few-shot benchmark built offline from Debian and npm packages.

Each module registers one domain with ``@DOMAINS.register(name)``; the CLI's
``edgefs data <domain>`` subcommands are generated from :data:`DOMAINS`.
Emoji image sets are never used (they are reserved for an independent check).
"""

from edgefs.data.domains import cards, clipart, flags, icons, units  # noqa: F401  (each registers a domain)
from edgefs.data.domains.base import (
    DOMAINS,
    Domain,
    Item,
    add_domain_parsers,
    build_domain,
    run_domain_command,
    split_classes,
)

__all__ = ["DOMAINS", "Domain", "Item", "add_domain_parsers", "build_domain", "run_domain_command",
           "split_classes"]

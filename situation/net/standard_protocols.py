"""Well-known ports and the application protocol each is labelled with (standard-protocol).

From the specification's data.json (``standard_protocol_tcp``, ``standard_protocol_udp``):
the original agent's maps, unchanged. Plain data, no I/O.
"""

TCP: dict[int, str] = {
    7: "echo", 9: "discard", 20: "ftp-data", 21: "ftp", 22: "ssh", 25: "smtp", 37: "time", 43: "whois",
    53: "dns", 67: "dhcp", 68: "dhcp", 80: "http", 88: "kerberos", 110: "pop3", 111: "onc-rpc", 115: "sftp",
    123: "ntp", 137: "netbios-ns", 139: "netbios-ssn", 143: "imap", 162: "snmp", 170: "print-srv",
    179: "bgp", 194: "irc", 220: "imap3", 389: "ldap", 443: "https", 445: "smb", 465: "smtp-tls",
    502: "modbus", 513: "rlogin", 515: "printer", 530: "rpc", 587: "smtp-tls", 631: "ipp", 636: "ldap-tls",
    749: "kerberos", 853: "dns-tls", 989: "ftps-data", 990: "ftps", 992: "telnet-tls", 993: "imap-tls",
    995: "pop3-tls", 1194: "openvpn", 1293: "ipsec", 1812: "radius", 1813: "radius", 1883: "mqtt",
    2049: "nfs", 2083: "radsec", 2375: "docker", 2376: "docker-tls", 2377: "docker-swarm", 2775: "smpp",
    3260: "iscsi", 3306: "mysql", 3389: "rdp", 3659: "apple-sasl", 5060: "sip", 5061: "sip-tls",
    5173: "vite", 5222: "xmpp-client", 5355: "llmnr", 5357: "wsdapi", 5432: "postgresql", 5601: "kibana",
    5670: "zeromq", 5671: "amqp-tls", 5672: "amqp", 5900: "vnc", 5984: "couchdb", 6379: "redis",
    6432: "pgbouncer", 6514: "syslog-tls", 6653: "openflow", 6665: "irc", 6666: "irc", 6667: "irc",
    6668: "irc", 6669: "irc", 6697: "irc-tls", 7474: "neo4j", 7687: "boltdb", 8006: "proxmox",
    8080: "http-alt", 8089: "splunk", 8093: "gitlab", 8125: "statsd", 8222: "vmware-http",
    8333: "vmware-https", 8443: "https-alt", 8530: "windows-update-http", 8531: "windows-update-https",
    8883: "mqtt-tls", 8983: "solr", 9006: "tomcat", 9100: "raw-print", 9200: "elasticsearch",
    10050: "zabbix-agent", 10051: "zabbix-trapper", 10514: "rsyslog-tls", 11211: "memcached",
    11434: "ollama", 11920: "syncthing", 27017: "mongodb", 32400: "plex",
}

UDP: dict[int, str] = {
    7: "echo", 9: "discard", 37: "time", 53: "dns", 67: "dhcp", 68: "dhcp", 69: "tftp", 88: "kerberos",
    111: "onc-rpc", 123: "ntp", 137: "netbios-ns", 138: "netbios-dgm", 161: "snmp", 162: "snmp-trap",
    389: "ldap", 443: "quic", 500: "isakmp", 514: "syslog", 520: "rip", 546: "dhcpv6-client",
    547: "dhcpv6-server", 623: "ipmi", 631: "ipp", 749: "kerberos", 853: "dns-dtls", 1194: "openvpn",
    1812: "radius", 1813: "radius-acct", 1900: "ssdp", 2049: "nfs", 3478: "stun", 3702: "ws-discovery",
    4500: "ipsec-nat", 5060: "sip", 5353: "mdns", 5355: "llmnr", 6343: "sflow", 8125: "statsd",
    11211: "memcached",
}

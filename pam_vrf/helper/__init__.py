"""pam-vrf-helper: a small non-root daemon holding CAP_BPF + CAP_NET_ADMIN
(+ CAP_DAC_OVERRIDE to move processes for `pam-vrf exec`).

    server       the Unix socket loop: limits, timeouts, SO_PEERCRED
    requests     what each request may do, checked against its peer
    attachments  programs loaded once per rule, attached to VRF cgroups,
                 re-attached when a VRF comes back with a new ifindex
    links        name -> ifindex, "is it a VRF", link events (pam_vrf.rtnl)
    main         command line, socket set-up, signals
"""

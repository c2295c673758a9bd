"""SIP phone calls into Realtime sessions (``--sip-listen``): see relay/sip/endpoint.py."""

"""voice-dialer: bulk outbound voice-notification calls through Huawei Cloud CEC, on arq + Redis."""

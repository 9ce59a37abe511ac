/// kisgw's version: `kisgw --version` prints it, and the KIS client names itself with it (`User-Agent:
/// kisgw/<version>`, ``KISClient/userAgent``).
public enum KisgwVersion {
    public static let current = "0.1.0"
}

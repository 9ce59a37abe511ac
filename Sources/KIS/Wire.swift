// The KIS Open API on the wire: paths, transaction ids, header names and JSON bodies
// (../shared/spec/kis-api.md). Shared by the simulator and the KIS client so both speak
// exactly the same field names.

/// KIS's two domains.
public enum KISEnvironment: String, Sendable, Codable, CaseIterable, Hashable {
    case live = "LIVE"
    case sandbox = "SANDBOX"

    /// Per-app-key REST calls per second KIS allows (FAQ of 2026-04-20).
    public var defaultRatePerSecond: Int { self == .live ? 18 : 1 }
}

public enum KISPath {
    public static let tokenP = "/oauth2/tokenP"
    public static let revokeP = "/oauth2/revokeP"
    public static let domesticDailyChart = "/uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice"
    public static let overseasDailyPrice = "/uapi/overseas-price/v1/quotations/dailyprice"
}

public enum KISTrID {
    /// 국내주식기간별시세(일/주/월/년), live and paper.
    public static let domesticDailyChart = "FHKST03010100"
    /// 해외주식 기간별시세, live and paper.
    public static let overseasDailyPrice = "HHDFS76240000"
}

/// `msg_cd` values kisgw produces or reacts to, with KIS's own texts.
public enum KISMessage {
    public static let ok = "MCA00000"
    public static let okText = "정상처리 되었습니다."

    public static let texts: [String: String] = [
        "EGW00001": "일시적 오류가 발생했습니다.",
        "EGW00002": "서버 에러가 발생했습니다.",
        "EGW00102": "AppKey는 필수입니다.",
        "EGW00103": "유효하지 않은 AppKey입니다.",
        "EGW00104": "AppSecret는 필수입니다.",
        "EGW00105": "유효하지 않은 AppSecret입니다.",
        "EGW00115": "grant_type은 필수입니다.",
        "EGW00116": "지원하지 않는 grant_type입니다.",
        "EGW00121": "유효하지 않은 token 입니다.",
        "EGW00122": "token을 찾을 수 없습니다.",
        "EGW00123": "기간이 만료된 token 입니다.",
        "EGW00133": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
        "EGW00201": "초당 거래건수를 초과하였습니다.",
        "EGW00205": "credentials_type이 유효하지 않습니다.(Bearer)",
        "EGW00206": "API 사용 권한이 없습니다.",
        "EGW00208": "고객유형(custtype)이 유효하지 않습니다.",
        "EGW00213": "모의투자 TR 이 아닙니다.",
        "EGW00215": "원장에서 허용 가능한 초당 거래건수를 초과하였습니다.",
        "OPSQ0002": "없는 서비스 코드 입니다",
    ]

    public static func text(_ code: String) -> String { texts[code] ?? "오류가 발생했습니다." }
}

// MARK: - tokens

/// `POST /oauth2/tokenP` body.
public struct KISTokenRequest: Codable, Sendable {
    public var grant_type: String
    public var appkey: String
    public var appsecret: String
    public init(appkey: String, appsecret: String, grant_type: String = "client_credentials") {
        self.grant_type = grant_type
        self.appkey = appkey
        self.appsecret = appsecret
    }
}

/// `POST /oauth2/tokenP` success body. Note KIS's doubled `token_token`.
public struct KISTokenResponse: Codable, Sendable, Equatable {
    public var access_token: String
    /// KST wall-clock `YYYY-MM-DD HH:MM:SS` with no offset.
    public var access_token_token_expired: String
    public var token_type: String
    public var expires_in: Int
    public init(access_token: String, access_token_token_expired: String, token_type: String = "Bearer", expires_in: Int) {
        self.access_token = access_token
        self.access_token_token_expired = access_token_token_expired
        self.token_type = token_type
        self.expires_in = expires_in
    }
}

/// The token endpoints' own error shape (no `rt_cd`, no `msg_cd`).
public struct KISTokenError: Codable, Sendable, Equatable {
    public var error_description: String
    public var error_code: String
    public init(code: String, description: String? = nil) {
        self.error_code = code
        self.error_description = description ?? KISMessage.text(code)
    }
}

/// `POST /oauth2/revokeP` body.
public struct KISRevokeRequest: Codable, Sendable {
    public var appkey: String
    public var appsecret: String
    public var token: String
    public init(appkey: String, appsecret: String, token: String) {
        self.appkey = appkey
        self.appsecret = appsecret
        self.token = token
    }
}

/// `POST /oauth2/revokeP` success body; KIS sends `code` as a number although its spec says string, so either is
/// read (kis-api.md: the client tolerates both).
public struct KISRevokeResponse: Codable, Sendable {
    public var code: Int
    public var message: String
    public init(code: Int = 200, message: String = "접근토큰 폐기에 성공하였습니다") {
        self.code = code
        self.message = message
    }

    private enum CodingKeys: String, CodingKey { case code, message }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let number = try? c.decode(Int.self, forKey: .code) {
            code = number
        } else {
            let text = try c.decode(String.self, forKey: .code)
            guard let number = Int(text.trimmingSpaces()) else {
                throw DecodingError.dataCorruptedError(forKey: .code, in: c, debugDescription: "code is not a number: \(text)")
            }
            code = number
        }
        message = try c.decodeIfPresent(String.self, forKey: .message) ?? ""
    }
}

// MARK: - quotations

/// KIS's result fields, which every quotation answer carries.
public protocol KISEnveloped {
    var rt_cd: String { get }
    var msg_cd: String { get }
    var msg1: String { get }
}

/// The envelope of every REST answer: `rt_cd "0"` is success.
public struct KISEnvelope: Codable, Sendable, Equatable {
    public var rt_cd: String
    public var msg_cd: String
    public var msg1: String
    public init(rt_cd: String, msg_cd: String, msg1: String? = nil) {
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1 ?? KISMessage.text(msg_cd)
    }
    public static func gateway(_ code: String) -> KISEnvelope { KISEnvelope(rt_cd: "1", msg_cd: code) }
}

/// `inquire-daily-itemchartprice` `output1`: a snapshot of the stock (all strings).
public struct KISDomesticOutput1: Codable, Sendable, Equatable {
    public var prdy_vrss, prdy_vrss_sign, prdy_ctrt, stck_prdy_clpr, acml_vol, acml_tr_pbmn, hts_kor_isnm: String
    public var stck_prpr, stck_shrn_iscd, prdy_vol, stck_mxpr, stck_llam, stck_oprc, stck_hgpr, stck_lwpr: String
    public var stck_prdy_oprc, stck_prdy_hgpr, stck_prdy_lwpr, askp, bidp, prdy_vrss_vol, vol_tnrt: String
    public var stck_fcam, lstn_stcn, cpfn, hts_avls, per, eps, pbr, itewhol_loan_rmnd_ratem: String

    public init(
        prdy_vrss: String,
        prdy_vrss_sign: String,
        prdy_ctrt: String,
        stck_prdy_clpr: String,
        acml_vol: String,
        acml_tr_pbmn: String,
        hts_kor_isnm: String,
        stck_prpr: String,
        stck_shrn_iscd: String,
        prdy_vol: String,
        stck_mxpr: String,
        stck_llam: String,
        stck_oprc: String,
        stck_hgpr: String,
        stck_lwpr: String,
        stck_prdy_oprc: String,
        stck_prdy_hgpr: String,
        stck_prdy_lwpr: String,
        askp: String,
        bidp: String,
        prdy_vrss_vol: String,
        vol_tnrt: String,
        stck_fcam: String,
        lstn_stcn: String,
        cpfn: String,
        hts_avls: String,
        per: String,
        eps: String,
        pbr: String,
        itewhol_loan_rmnd_ratem: String
    ) {
        self.prdy_vrss = prdy_vrss
        self.prdy_vrss_sign = prdy_vrss_sign
        self.prdy_ctrt = prdy_ctrt
        self.stck_prdy_clpr = stck_prdy_clpr
        self.acml_vol = acml_vol
        self.acml_tr_pbmn = acml_tr_pbmn
        self.hts_kor_isnm = hts_kor_isnm
        self.stck_prpr = stck_prpr
        self.stck_shrn_iscd = stck_shrn_iscd
        self.prdy_vol = prdy_vol
        self.stck_mxpr = stck_mxpr
        self.stck_llam = stck_llam
        self.stck_oprc = stck_oprc
        self.stck_hgpr = stck_hgpr
        self.stck_lwpr = stck_lwpr
        self.stck_prdy_oprc = stck_prdy_oprc
        self.stck_prdy_hgpr = stck_prdy_hgpr
        self.stck_prdy_lwpr = stck_prdy_lwpr
        self.askp = askp
        self.bidp = bidp
        self.prdy_vrss_vol = prdy_vrss_vol
        self.vol_tnrt = vol_tnrt
        self.stck_fcam = stck_fcam
        self.lstn_stcn = lstn_stcn
        self.cpfn = cpfn
        self.hts_avls = hts_avls
        self.per = per
        self.eps = eps
        self.pbr = pbr
        self.itewhol_loan_rmnd_ratem = itewhol_loan_rmnd_ratem
    }

    /// What KIS answers for a code it does not know: `stck_prpr "0"` and empty fields.
    public static func unknown(_ code: String) -> KISDomesticOutput1 {
        KISDomesticOutput1(
            prdy_vrss: "0", prdy_vrss_sign: "3", prdy_ctrt: "0.00", stck_prdy_clpr: "0", acml_vol: "0",
            acml_tr_pbmn: "0", hts_kor_isnm: "", stck_prpr: "0", stck_shrn_iscd: "", prdy_vol: "0", stck_mxpr: "0",
            stck_llam: "0", stck_oprc: "0", stck_hgpr: "0", stck_lwpr: "0", stck_prdy_oprc: "0", stck_prdy_hgpr: "0",
            stck_prdy_lwpr: "0", askp: "0", bidp: "0", prdy_vrss_vol: "0", vol_tnrt: "0.00", stck_fcam: "0",
            lstn_stcn: "0", cpfn: "0", hts_avls: "0", per: "0.00", eps: "0.00", pbr: "0.00",
            itewhol_loan_rmnd_ratem: "0.00")
    }
}

/// One `output2` bar of the domestic chart. Every field is optional because KIS sometimes sends `{}`.
public struct KISDomesticBar: Codable, Sendable, Equatable {
    public var stck_bsop_date, stck_clpr, stck_oprc, stck_hgpr, stck_lwpr, acml_vol, acml_tr_pbmn: String?
    public var flng_cls_code, prtt_rate, mod_yn, prdy_vrss_sign, prdy_vrss, revl_issu_reas: String?
    public init(
        stck_bsop_date: String?, stck_clpr: String?, stck_oprc: String?, stck_hgpr: String?, stck_lwpr: String?,
        acml_vol: String?, acml_tr_pbmn: String?, flng_cls_code: String? = "00", prtt_rate: String? = "0.00",
        mod_yn: String? = "N", prdy_vrss_sign: String?, prdy_vrss: String?, revl_issu_reas: String? = ""
    ) {
        self.stck_bsop_date = stck_bsop_date
        self.stck_clpr = stck_clpr
        self.stck_oprc = stck_oprc
        self.stck_hgpr = stck_hgpr
        self.stck_lwpr = stck_lwpr
        self.acml_vol = acml_vol
        self.acml_tr_pbmn = acml_tr_pbmn
        self.flng_cls_code = flng_cls_code
        self.prtt_rate = prtt_rate
        self.mod_yn = mod_yn
        self.prdy_vrss_sign = prdy_vrss_sign
        self.prdy_vrss = prdy_vrss
        self.revl_issu_reas = revl_issu_reas
    }
    public static let empty = KISDomesticBar(
        stck_bsop_date: nil, stck_clpr: nil, stck_oprc: nil, stck_hgpr: nil, stck_lwpr: nil, acml_vol: nil,
        acml_tr_pbmn: nil, flng_cls_code: nil, prtt_rate: nil, mod_yn: nil, prdy_vrss_sign: nil, prdy_vrss: nil,
        revl_issu_reas: nil)
}

/// `inquire-daily-itemchartprice` body.
public struct KISDomesticChartResponse: Codable, Sendable, Equatable {
    public var output1: KISDomesticOutput1?
    public var output2: [KISDomesticBar]?
    public var rt_cd: String
    public var msg_cd: String
    public var msg1: String
    public init(output1: KISDomesticOutput1?, output2: [KISDomesticBar]?, rt_cd: String = "0",
                msg_cd: String = KISMessage.ok, msg1: String = KISMessage.okText) {
        self.output1 = output1
        self.output2 = output2
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1
    }
}

/// `dailyprice` `output1`. `nrec` is a record count despite its label.
public struct KISOverseasOutput1: Codable, Sendable, Equatable {
    public var rsym: String
    public var zdiv: String
    public var nrec: String
    public init(rsym: String, zdiv: String, nrec: String) {
        self.rsym = rsym
        self.zdiv = zdiv
        self.nrec = nrec
    }
}

/// One `dailyprice` `output2` row. `pbid`…`vask` are absent on zero-volume days.
public struct KISOverseasBar: Codable, Sendable, Equatable {
    public var xymd, clos, sign, diff, rate, open, high, low, tvol, tamt: String?
    public var pbid, vbid, pask, vask: String?
    public init(
        xymd: String?, clos: String?, sign: String?, diff: String?, rate: String?, open: String?, high: String?,
        low: String?, tvol: String?, tamt: String?, pbid: String? = nil, vbid: String? = nil, pask: String? = nil,
        vask: String? = nil
    ) {
        self.xymd = xymd
        self.clos = clos
        self.sign = sign
        self.diff = diff
        self.rate = rate
        self.open = open
        self.high = high
        self.low = low
        self.tvol = tvol
        self.tamt = tamt
        self.pbid = pbid
        self.vbid = vbid
        self.pask = pask
        self.vask = vask
    }
}

/// `dailyprice` body.
public struct KISOverseasDailyResponse: Codable, Sendable, Equatable {
    public var output1: KISOverseasOutput1?
    public var output2: [KISOverseasBar]?
    public var rt_cd: String
    public var msg_cd: String
    public var msg1: String
    public init(output1: KISOverseasOutput1?, output2: [KISOverseasBar]?, rt_cd: String = "0",
                msg_cd: String = KISMessage.ok, msg1: String = KISMessage.okText) {
        self.output1 = output1
        self.output2 = output2
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1
    }
}

// MARK: - What the gateway reads of a chart page

/// The part of an `inquire-daily-itemchartprice` answer the gateway reads.
///
/// The client reads pages with ``KISAnswerReader`` (simdjson), only these fields (of the 30 in `output1` and 13 in
/// every `output2` row); `Decodable` stays so the tests can hold that reader to `JSONDecoder`. The simulator writes
/// the whole answer (``KISDomesticChartResponse``).
public struct KISDomesticChartPage: Decodable, Sendable, Equatable, KISEnveloped {
    public struct Snapshot: Decodable, Sendable, Equatable {
        public var stck_prpr: String?
        public var hts_kor_isnm: String?
    }
    public struct Row: Decodable, Sendable, Equatable {
        public var stck_bsop_date, stck_clpr, stck_oprc, stck_hgpr, stck_lwpr, acml_vol, acml_tr_pbmn: String?
    }
    public var output1: Snapshot?
    public var output2: [Row]?
    public var rt_cd: String
    public var msg_cd: String
    public var msg1: String
}

/// The part of a `dailyprice` answer the gateway reads (see ``KISDomesticChartPage``).
public struct KISOverseasChartPage: Decodable, Sendable, Equatable, KISEnveloped {
    public struct Summary: Decodable, Sendable, Equatable {
        public var nrec: String?
    }
    public struct Row: Decodable, Sendable, Equatable {
        public var xymd, clos, open, high, low, tvol, tamt: String?
    }
    public var output1: Summary?
    public var output2: [Row]?
    public var rt_cd: String
    public var msg_cd: String
    public var msg1: String
}

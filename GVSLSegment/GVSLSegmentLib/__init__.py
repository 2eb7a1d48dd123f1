"""Logic of the GVSLSegment module that talks to MRML and calls the gvsl backend; imports no Qt."""

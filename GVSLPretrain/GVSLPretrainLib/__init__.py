"""Logic of the GVSLPretrain module that talks to MRML and calls the gvsl backend; imports no Qt."""
